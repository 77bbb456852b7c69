//! A user-space link impairment proxy for TCP (Stratum): delay, jitter, blackouts and a loss
//! model, seeded so a run repeats. Its UDP sibling is [`crate::impair`].
//!
//! TCP never loses bytes: a lost segment costs its sender a retransmission. So `loss` here
//! delays a chunk by an extra retransmission timeout (`max(200 ms, RTT)`, Linux's minimum RTO)
//! with that probability, and a blackout holds every byte until the link is back. Delivery keeps
//! each direction's byte order (a chunk is never delivered before the one read before it), so
//! jitter stretches the gaps between chunks rather than reordering them, as on a real TCP path.
//!
//! Two reader threads per connection and one shared scheduler thread that writes every chunk
//! when it is due: fine for the few hundred connections of a baseline run, not for ten thousand.

use crossbeam_channel::{Receiver, Sender};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BinaryHeap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the TCP link misbehaves, per direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TcpImpairment {
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability that a chunk needs a retransmission (costing an extra RTO), 0..1.
    pub loss: f64,
    pub seed: u64,
}

/// Linux's minimum retransmission timeout.
const MIN_RTO: Duration = Duration::from_millis(200);

#[derive(Default, Debug)]
pub struct TcpProxyStats {
    pub connections: AtomicU64,
    pub chunks: AtomicU64,
    pub bytes: AtomicU64,
    pub retransmit_delays: AtomicU64,
}

/// A listening proxy: every connection to `listen` is relayed to `target` through the impaired
/// link. Dropping it stops it and closes every relayed connection.
pub struct TcpProxy {
    pub listen: SocketAddr,
    blackout: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    pub stats: Arc<TcpProxyStats>,
    threads: Vec<JoinHandle<()>>,
}

/// One chunk (or the end of a stream) on its way.
struct Chunk {
    conn: u64,
    /// Towards the target (else towards the client).
    up: bool,
    /// `None`: the sender closed its side.
    data: Option<Vec<u8>>,
}

enum Msg {
    Open {
        conn: u64,
        client: TcpStream,
        target: TcpStream,
    },
    Read(Chunk),
}

struct Due {
    at: Instant,
    seq: u64,
    chunk: Chunk,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Due {}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl TcpProxy {
    pub fn start(
        listen: SocketAddr,
        target: SocketAddr,
        imp: TcpImpairment,
    ) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let listen = listener.local_addr()?;
        let blackout = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(TcpProxyStats::default());
        let (tx, rx) = crossbeam_channel::unbounded();
        let accept = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("tcp-proxy-accept".into())
                .spawn(move || accept_loop(listener, target, tx, stop, stats))?
        };
        let sched = {
            let (blackout, stop, stats) = (blackout.clone(), stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("tcp-proxy-sched".into())
                .spawn(move || schedule_loop(rx, imp, blackout, stop, stats))?
        };
        Ok(TcpProxy {
            listen,
            blackout,
            stop,
            stats,
            threads: vec![accept, sched],
        })
    }

    /// Cuts (or restores) the link in both directions: bytes wait until it is back.
    pub fn set_blackout(&self, on: bool) {
        self.blackout.store(on, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
    stats: Arc<TcpProxyStats>,
) {
    let mut next_conn = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            continue;
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let conn = next_conn;
        next_conn += 1;
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
            continue;
        };
        if tx
            .send(Msg::Open {
                conn,
                client: c2,
                target: u2,
            })
            .is_err()
        {
            return;
        }
        for (from, up) in [(client, true), (upstream, false)] {
            let (tx, stop) = (tx.clone(), stop.clone());
            let _ = std::thread::Builder::new()
                .name("tcp-proxy-read".into())
                .spawn(move || read_loop(from, conn, up, tx, stop));
        }
    }
}

fn read_loop(mut from: TcpStream, conn: u64, up: bool, tx: Sender<Msg>, stop: Arc<AtomicBool>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let data = match from.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => None,
        };
        let end = data.is_none();
        if tx.send(Msg::Read(Chunk { conn, up, data })).is_err() || end {
            return;
        }
    }
}

fn schedule_loop(
    rx: Receiver<Msg>,
    imp: TcpImpairment,
    blackout: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    stats: Arc<TcpProxyStats>,
) {
    let mut rng = StdRng::seed_from_u64(imp.seed);
    let mut conns: HashMap<u64, (TcpStream, TcpStream)> = HashMap::new();
    // The latest due time per (connection, direction): byte order is kept.
    let mut last_due: HashMap<(u64, bool), Instant> = HashMap::new();
    let mut heap: BinaryHeap<Due> = BinaryHeap::new();
    let mut seq = 0u64;
    let rto = MIN_RTO.max(imp.delay * 2);
    while !stop.load(Ordering::Relaxed) {
        let wait = heap
            .peek()
            .map_or(Duration::from_millis(50), |d| {
                d.at.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(50));
        match rx.recv_timeout(wait) {
            Ok(Msg::Open {
                conn,
                client,
                target,
            }) => {
                conns.insert(conn, (client, target));
            }
            Ok(Msg::Read(chunk)) => {
                let now = Instant::now();
                let jitter = if imp.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    imp.jitter.mul_f64(rng.gen::<f64>())
                };
                let mut at = now + imp.delay + jitter;
                if imp.loss > 0.0 && rng.gen::<f64>() < imp.loss {
                    at += rto;
                    stats.retransmit_delays.fetch_add(1, Ordering::Relaxed);
                }
                let key = (chunk.conn, chunk.up);
                if let Some(prev) = last_due.get(&key) {
                    at = at.max(*prev);
                }
                last_due.insert(key, at);
                seq += 1;
                heap.push(Due { at, seq, chunk });
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                if heap.is_empty() {
                    return;
                }
            }
        }
        if blackout.load(Ordering::Relaxed) {
            continue;
        }
        let now = Instant::now();
        while heap.peek().is_some_and(|d| d.at <= now) {
            let Some(due) = heap.pop() else { break };
            let c = due.chunk;
            let Some((client, target)) = conns.get(&c.conn) else {
                continue;
            };
            let mut to: &TcpStream = if c.up { target } else { client };
            match c.data {
                Some(bytes) => {
                    stats.chunks.fetch_add(1, Ordering::Relaxed);
                    stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    if to.write_all(&bytes).is_err() {
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = target.shutdown(Shutdown::Both);
                    }
                }
                None => {
                    let _ = to.shutdown(Shutdown::Write);
                    last_due.remove(&(c.conn, c.up));
                    if !last_due.contains_key(&(c.conn, !c.up)) {
                        conns.remove(&c.conn);
                    }
                }
            }
        }
    }
    for (client, target) in conns.values() {
        let _ = client.shutdown(Shutdown::Both);
        let _ = target.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn relays_lines_after_the_delay_and_holds_them_through_a_blackout() {
        let echo = TcpListener::bind("127.0.0.1:0").expect("bind");
        let target = echo.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (s, _) = echo.accept().expect("accept");
            let mut w = s.try_clone().expect("clone");
            for line in std::io::BufReader::new(s).lines() {
                let Ok(l) = line else { return };
                if writeln!(w, "{l}").is_err() {
                    return;
                }
            }
        });
        let imp = TcpImpairment {
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(10),
            loss: 0.0,
            seed: 7,
        };
        let proxy =
            TcpProxy::start("127.0.0.1:0".parse().expect("addr"), target, imp).expect("proxy");
        let mut c = TcpStream::connect(proxy.listen).expect("connect");
        let mut r = std::io::BufReader::new(c.try_clone().expect("clone"));
        let t0 = Instant::now();
        writeln!(c, "one").expect("write");
        let mut line = String::new();
        r.read_line(&mut line).expect("read");
        assert_eq!(line, "one\n");
        assert!(
            t0.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t0.elapsed()
        );

        proxy.set_blackout(true);
        let t1 = Instant::now();
        writeln!(c, "two").expect("write");
        std::thread::spawn({
            let b = proxy.blackout.clone();
            move || {
                std::thread::sleep(Duration::from_millis(300));
                b.store(false, Ordering::SeqCst);
            }
        });
        line.clear();
        r.read_line(&mut line).expect("read");
        assert_eq!(line, "two\n");
        assert!(
            t1.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t1.elapsed()
        );
    }
}
