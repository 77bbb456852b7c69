//! Hostile clients for the `hostile` scenario: connections that misbehave on purpose, mixed with
//! honest miners, so the report can show the honest ones do not suffer.
//!
//! - **malformed**: a stream of lines that are not Stratum (bad JSON, wrong parameter counts).
//! - **oversized**: one line far beyond any sane length, with no newline.
//! - **slowloris**: a request trickled one byte a second, never finished.
//! - **invalid-share flood**: real miners (the mio runner) whose every share is below the
//!   difficulty, at a high rate, from 127.0.0.2 so the edge's ban falls on them alone.
//!
//! The raw clients connect from 127.0.0.3 and reconnect when the edge closes them; the report
//! counts how often it did.

use crate::bench_uplink::Miners;
use crate::miner::{MinerStats, ProfileChoice, RunConfig, ShareMix, StratumUrl};
use relay::PowAlgorithm;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How many of each hostile client.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostileSpec {
    #[serde(default)]
    pub malformed: usize,
    #[serde(default)]
    pub oversized: usize,
    #[serde(default)]
    pub slowloris: usize,
    /// Flooding miners (all shares low-difficulty).
    #[serde(default)]
    pub invalid_flood: usize,
    /// Shares per second of all flooding miners together.
    #[serde(default = "default_flood_rate")]
    pub invalid_flood_rate: f64,
}

fn default_flood_rate() -> f64 {
    2000.0
}

impl HostileSpec {
    pub fn any(&self) -> bool {
        self.malformed + self.oversized + self.slowloris + self.invalid_flood > 0
    }
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    /// The edge closed the connection.
    closed_by_edge: AtomicU64,
    lines_sent: AtomicU64,
    bytes_sent: AtomicU64,
}

/// What the hostile clients did and how the edge treated them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostileReport {
    pub connects: u64,
    pub connect_failures: u64,
    pub closed_by_edge: u64,
    pub lines_sent: u64,
    pub bytes_sent: u64,
    pub flood: Option<MinerStats>,
}

impl std::fmt::Display for HostileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "raw clients: {} connects ({} failed), {} closed by the edge, {} lines / {} bytes sent",
            self.connects,
            self.connect_failures,
            self.closed_by_edge,
            self.lines_sent,
            self.bytes_sent
        )?;
        if let Some(s) = &self.flood {
            write!(
                f,
                "; flood: {} submitted, {} rejected, {} connects, {} disconnects",
                s.shares.submitted, s.shares.rejected, s.connects, s.disconnects
            )?;
        }
        Ok(())
    }
}

pub struct HostileClients {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
    flood: Option<Miners>,
}

const RAW_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const FLOOD_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[derive(Clone, Copy)]
enum Kind {
    Malformed,
    Oversized,
    Slowloris,
}

impl HostileClients {
    pub fn start(
        spec: &HostileSpec,
        target: SocketAddr,
        difficulty: f64,
    ) -> anyhow::Result<HostileClients> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut threads = Vec::new();
        for (kind, n) in [
            (Kind::Malformed, spec.malformed),
            (Kind::Oversized, spec.oversized),
            (Kind::Slowloris, spec.slowloris),
        ] {
            for _ in 0..n {
                let (stop, counters) = (stop.clone(), counters.clone());
                threads.push(
                    std::thread::Builder::new()
                        .name("hostile".into())
                        .spawn(move || client_loop(kind, target, &stop, &counters))?,
                );
            }
        }
        let flood = (spec.invalid_flood > 0).then(|| {
            let mut rc = RunConfig::new(
                StratumUrl {
                    host: target.ip().to_string(),
                    port: target.port(),
                },
                spec.invalid_flood,
                PowAlgorithm::Sha256d,
            );
            rc.hashrate =
                spec.invalid_flood_rate / spec.invalid_flood as f64 * difficulty * 4_294_967_296.0;
            rc.profile = ProfileChoice::Mixed;
            rc.user = "flood.rig".into();
            rc.mix = ShareMix {
                duplicate: 0.0,
                stale: 0.0,
                low_difficulty: 1.0,
                malformed: 0.0,
            };
            rc.duration = None;
            rc.source_addrs = vec![FLOOD_SOURCE];
            rc.backoff_max = Duration::from_secs(1);
            rc.threads = 1;
            // A hit found while searching for a miss is sent as the valid share it is, and the
            // core credits it: the exactly-once check counts these too.
            rc.record_accepted = true;
            Miners::start(rc)
        });
        Ok(HostileClients {
            stop,
            counters,
            threads,
            flood,
        })
    }

    pub fn finish(self) -> HostileReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let flood = self.flood.and_then(|m| m.finish().ok());
        let c = &self.counters;
        HostileReport {
            connects: c.connects.load(Ordering::Relaxed),
            connect_failures: c.connect_failures.load(Ordering::Relaxed),
            closed_by_edge: c.closed_by_edge.load(Ordering::Relaxed),
            lines_sent: c.lines_sent.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            flood,
        }
    }
}

fn connect_from(target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(RAW_SOURCE, 0).into())?;
    s.connect_timeout(&target.into(), Duration::from_secs(2))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_millis(10)))?;
    Ok(s)
}

/// True when the peer has closed (read returned 0 or failed hard).
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn client_loop(kind: Kind, target: SocketAddr, stop: &AtomicBool, c: &Counters) {
    const MALFORMED: [&str; 4] = [
        "this is not json\n",
        "{\"id\":1,\"method\":\"mining.submit\",\"params\":[1,2]}\n",
        "{\"id\":\"x\",\"method\":42}\n",
        "[[[[[[[[[[\n",
    ];
    while !stop.load(Ordering::Relaxed) {
        let mut s = match connect_from(target) {
            Ok(s) => s,
            Err(_) => {
                c.connect_failures.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        c.connects.fetch_add(1, Ordering::Relaxed);
        let mut i = 0usize;
        let big = vec![b'A'; 64 * 1024];
        let mut sent_big = 0usize;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let wrote = match kind {
                Kind::Malformed => {
                    let line = MALFORMED[i % MALFORMED.len()];
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10));
                    s.write_all(line.as_bytes()).map(|_| {
                        c.lines_sent.fetch_add(1, Ordering::Relaxed);
                        line.len()
                    })
                }
                Kind::Oversized if sent_big < 4 << 20 => s.write(&big).inspect(|n| {
                    sent_big += n;
                }),
                Kind::Oversized => {
                    std::thread::sleep(Duration::from_millis(100));
                    Ok(0)
                }
                Kind::Slowloris => {
                    std::thread::sleep(Duration::from_secs(1));
                    let b = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}";
                    i += 1;
                    s.write(&b[(i - 1) % b.len()..][..1])
                }
            };
            match wrote {
                Ok(n) => {
                    c.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    c.closed_by_edge.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            if closed(&mut s) {
                c.closed_by_edge.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
